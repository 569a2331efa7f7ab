//! End-to-end tests of the volcengine providers against their vendor mocks. (Scaffold: being written.)
