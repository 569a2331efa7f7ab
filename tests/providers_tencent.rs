//! End-to-end tests of the tencent providers against their vendor mocks. (Scaffold: being written.)
