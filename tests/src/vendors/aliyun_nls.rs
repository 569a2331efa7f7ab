//! The aliyun_nls mock. (Scaffold: being written.)
