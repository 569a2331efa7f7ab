//! End-to-end tests of the chat apps providers against their vendor mocks. (Scaffold: being written.)
