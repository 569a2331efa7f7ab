//! The volcengine mock. (Scaffold: being written.)
