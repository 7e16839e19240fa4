//! `Any` payloads as berthd decodes them: a task's or container's runc options, and the
//! Transfer service's sources and destinations. An `Any` unpacks only as the type its URL
//! names, and what unpacks encodes to bytes that decode to the same message.
#![no_main]
use berth_api::containerd::runc::v1::Options as RuncOptions;
use berth_api::containerd::types::transfer::{
    ImageExportStream, ImageImportStream, ImageStore, OciRegistry,
};
use berth_api::{unpack_any, UnpackError};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// Unpacks `any` as `T`; when it unpacks, checks the round trip and returns true.
fn unpacks_as<T: prost::Name + Default + PartialEq + std::fmt::Debug>(
    any: &prost_types::Any,
) -> bool {
    match unpack_any::<T>(any) {
        Ok(message) => {
            let again = T::decode(message.encode_to_vec().as_slice()).expect("re-decodes");
            assert_eq!(again, message);
            true
        }
        Err(UnpackError::TypeMismatch { .. }) | Err(UnpackError::Decode(_)) => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(any) = prost_types::Any::decode(data) else {
        return;
    };
    let unpacked = [
        unpacks_as::<RuncOptions>(&any),
        unpacks_as::<OciRegistry>(&any),
        unpacks_as::<ImageStore>(&any),
        unpacks_as::<ImageImportStream>(&any),
        unpacks_as::<ImageExportStream>(&any),
    ];
    // One URL names one type.
    assert!(unpacked.iter().filter(|&&u| u).count() <= 1, "{}", any.type_url);
});
