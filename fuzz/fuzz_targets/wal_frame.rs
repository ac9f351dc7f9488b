//! Frame headers, index files and checkpoint files decoded from arbitrary bytes: every decoder either
//! accepts or returns a typed corruption error; none panics, and what a header decoder accepts re-encodes
//! to the same bytes.
#![no_main]

use chronik_wal::{
    checkpoint,
    frame::{FrameHeader, FRAME_HEADER_LEN},
    index::SparseIndex,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= FRAME_HEADER_LEN {
        let mut h = [0u8; FRAME_HEADER_LEN];
        h.copy_from_slice(&data[..FRAME_HEADER_LEN]);
        if let Ok(header) = FrameHeader::decode(&h, 1 << 20) {
            assert_eq!(header.encode(), h, "an accepted header re-encodes to its bytes");
            let _ = header.verify_payload(&data[FRAME_HEADER_LEN..]);
        }
    }
    let _ = SparseIndex::decode(data, 0, 4096);
    let _ = checkpoint::decode(data);
});
