//! The tencent mock. (Scaffold: being written.)
