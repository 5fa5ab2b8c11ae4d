//! chorus-edge
