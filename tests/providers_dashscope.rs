//! End-to-end tests of the dashscope providers against their vendor mocks. (Scaffold: being written.)
