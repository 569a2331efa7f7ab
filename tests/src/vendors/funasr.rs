//! The funasr mock. (Scaffold: being written.)
