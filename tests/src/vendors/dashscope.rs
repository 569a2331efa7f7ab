//! The dashscope mock. (Scaffold: being written.)
