//! End-to-end tests of the speech servers providers against their vendor mocks. (Scaffold: being written.)
