//! End-to-end tests of the xunfei providers against their vendor mocks. (Scaffold: being written.)
