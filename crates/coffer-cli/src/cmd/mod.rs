pub(crate) mod demo;
pub(crate) mod image;
pub(crate) mod snp;
