//! End-to-end tests of the edge minimax providers against their vendor mocks. (Scaffold: being written.)
