//! Feeds arbitrary bytes to the IDM frame decoder. It must never panic, and whatever it accepts
//! must survive an encode/decode round trip unchanged. The round trip compares the re-encoded
//! bytes, not the messages: a float that is NaN is not equal to itself, but its bytes are.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_idm::msg::decode_frame;

fuzz_target!(|data: &[u8]| {
    if let Ok((id, msg)) = decode_frame(data) {
        let bytes = msg
            .to_frame(id)
            .to_bytes()
            .expect("a decoded frame fits the limits");
        let (id2, msg2) = decode_frame(&bytes).expect("re-encoded frame decodes");
        assert_eq!(id, id2);
        let bytes2 = msg2
            .to_frame(id2)
            .to_bytes()
            .expect("a decoded frame fits the limits");
        assert_eq!(bytes, bytes2);
    }
});
