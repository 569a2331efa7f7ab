//! The siliconflow mock. (Scaffold: being written.)
