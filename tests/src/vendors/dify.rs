//! The dify mock. (Scaffold: being written.)
