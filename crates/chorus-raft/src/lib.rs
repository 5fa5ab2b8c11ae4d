//! chorus-raft
