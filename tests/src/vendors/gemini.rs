//! The gemini mock. (Scaffold: being written.)
