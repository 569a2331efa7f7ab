//! The coze mock. (Scaffold: being written.)
