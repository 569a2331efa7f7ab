//! The gpt_sovits mock. (Scaffold: being written.)
