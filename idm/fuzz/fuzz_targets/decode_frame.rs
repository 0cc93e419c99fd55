//! Feeds arbitrary bytes to the IDM frame decoder. It must never panic, and whatever it accepts
//! must survive an encode/decode round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_idm::msg::{Message, decode_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok((id, msg)) = decode_frame(data) {
        let bytes = msg
            .to_frame(id)
            .to_bytes()
            .expect("a decoded frame fits the limits");
        let (id2, msg2) = decode_frame(&bytes).expect("re-encoded frame decodes");
        assert_eq!(id, id2);
        assert_eq!(msg, msg2);
    }
});
