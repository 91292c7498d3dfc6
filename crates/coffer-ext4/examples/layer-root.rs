//! `layer-root LAYER.tar [IMAGE]`: print the layer hash (tar2ext4 root digest) of a tar; with
//! IMAGE, also write the ext4 image there (then hashed separately, as a cross-check).

use std::fs::File;
use std::io::BufReader;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(tar) = args.get(1) else {
        return Err("usage: layer-root LAYER.tar [IMAGE]".into());
    };
    let root = coffer_ext4::root_digest(BufReader::with_capacity(1 << 20, File::open(tar)?))?;
    println!("{}", hex::encode(root));
    if let Some(image) = args.get(2) {
        let out = File::create(image)?;
        let info = coffer_ext4::convert(File::open(tar)?, out, &coffer_ext4::Options::default())?;
        let again = coffer_verity::root_hash(BufReader::new(File::open(image)?))?;
        eprintln!("image {} bytes, root {}", info.size, hex::encode(again));
    }
    Ok(())
}
