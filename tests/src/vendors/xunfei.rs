//! The xunfei mock. (Scaffold: being written.)
