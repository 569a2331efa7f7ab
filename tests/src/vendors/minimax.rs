//! The minimax mock. (Scaffold: being written.)
