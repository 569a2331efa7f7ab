//! The edge mock. (Scaffold: being written.)
