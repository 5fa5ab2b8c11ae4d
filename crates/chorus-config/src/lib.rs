//! chorus-config
