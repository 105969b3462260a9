//! Sidekey's mutating admission webhook.
#![forbid(unsafe_code)]
