pub(crate) mod demo;
pub(crate) mod encfs;
pub(crate) mod image;
pub(crate) mod policy;
pub(crate) mod run;
pub(crate) mod serve;
pub(crate) mod snp;
pub(crate) mod uvm;
