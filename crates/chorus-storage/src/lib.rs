//! chorus-storage
