//! The fishspeech mock. (Scaffold: being written.)
