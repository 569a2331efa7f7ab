//! The fastgpt mock. (Scaffold: being written.)
