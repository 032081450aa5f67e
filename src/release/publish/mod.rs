//! Publishing, from a laptop or CI: `release push` (the tree hashed, the objects the source lacks, the
//! bundle, the manifest, then the pointer, conditionally), its signature, and `release rollback`.

pub mod bundle;
pub mod push;
pub mod rollback;
pub mod sign;
