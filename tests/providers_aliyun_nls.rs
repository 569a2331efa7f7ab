//! End-to-end tests of the aliyun nls providers against their vendor mocks. (Scaffold: being written.)
