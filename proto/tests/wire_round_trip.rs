//! Every wire message survives protobuf encoding, and arbitrary bytes never make decoding panic.

use proptest::prelude::*;
use prost::Message;
use seedkv_proto::pb;

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..24)
}

proptest! {
    #[test]
    fn kv_requests_round_trip(key in bytes(), value in bytes(), expect in prop::option::of(bytes()), limit in any::<u32>(), seq in any::<u64>()) {
        let session = Some(pb::Session { client_id: u64::from(limit), seq, acked_below: seq / 2, group: limit });
        let put = pb::PutRequest { key: key.clone(), value: value.clone(), session };
        prop_assert_eq!(pb::PutRequest::decode(put.encode_to_vec().as_slice()).ok(), Some(put.clone()));
        let cas = pb::CasRequest { key: key.clone(), expect, new_value: Some(value.clone()), session: None };
        prop_assert_eq!(pb::CasRequest::decode(cas.encode_to_vec().as_slice()).ok(), Some(cas.clone()));
        let batch = pb::BatchRequest {
            ops: vec![
                pb::WriteOp { op: Some(pb::write_op::Op::Put(put)) },
                pb::WriteOp { op: Some(pb::write_op::Op::Cas(cas)) },
                pb::WriteOp { op: Some(pb::write_op::Op::Delete(pb::DeleteRequest { key: key.clone(), session })) },
            ],
            session,
        };
        prop_assert_eq!(pb::BatchRequest::decode(batch.encode_to_vec().as_slice()).ok(), Some(batch));
        let scan = pb::ScanRequest { prefix: key.clone(), from: value.clone(), to: vec![], limit, consistency: 1, group: limit };
        prop_assert_eq!(pb::ScanRequest::decode(scan.encode_to_vec().as_slice()).ok(), Some(scan));
        let raft = pb::RaftMessage { group: limit, payload: value, cluster_id: u64::MAX, from: 3, from_incarnation: 1 << 63, to: 1, to_incarnation: 7, refused: String::from_utf8_lossy(&key).into_owned() };
        let batch = pb::RaftBatch { messages: vec![raft.clone(), pb::RaftMessage::default()] };
        prop_assert_eq!(pb::RaftMessage::decode(raft.encode_to_vec().as_slice()).ok(), Some(raft));
        prop_assert_eq!(pb::RaftBatch::decode(batch.encode_to_vec().as_slice()).ok(), Some(batch));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(data in prop::collection::vec(any::<u8>(), 0..128)) {
        let _ = pb::BatchRequest::decode(data.as_slice());
        let _ = pb::ScanRequest::decode(data.as_slice());
        let _ = pb::StatusResponse::decode(data.as_slice());
        let _ = pb::RaftMessage::decode(data.as_slice());
        let _ = pb::RaftBatch::decode(data.as_slice());
    }
}
