//! chorus-node
