//! Keeps the inventory of sandboxes and containers (see `inventory.rs`) up to date from the
//! calls that pass: RunPodSandbox and CreateContainer answers add, RemoveContainer and
//! RemovePodSandbox remove; ImageStatus and PullImage answers name image ids; Status answers
//! say whether the runtime runs pods in user namespaces. It is the
//! outermost observer, so that the layers inside it still find an object while its Remove call
//! ends.

use bytes::{Bytes, BytesMut};

use super::observe::{Observe, ObserveLayer};
use crate::inventory::Inventory;
use crate::proxy::body::framing::PREFIX_LEN;
use crate::proxy::body::{Outcome, RequestMessageSlot, StatusObserver};
use crate::proxy::inspect::{self, Subject};
use crate::proxy::rpc::{Method, Rpc};

/// The learning layer's settings: [`ObserveLayer`]`<Learn>` is the layer.
#[derive(Clone, Debug)]
pub struct Learn {
    inventory: Option<Inventory>,
}

impl Learn {
    /// Without an inventory (neither audit nor policies need one), the layer learns nothing.
    pub fn layer(inventory: Option<Inventory>) -> ObserveLayer<Learn> {
        ObserveLayer::new(Learn { inventory })
    }
}

impl Observe for Learn {
    type Record = Option<LearnRecord>;

    fn start<B>(&self, request: &mut http::Request<B>) -> Option<LearnRecord> {
        let inventory = self.inventory.as_ref()?;
        let method = request.extensions().get::<Rpc>()?.method;
        // Status answers are learned even while nothing else is: whether the runtime runs
        // user namespaces decides the Pod Security checks of every container in one.
        let wanted = inventory.needed() || method == Method::Status;
        (method.facts().learned && wanted).then(|| LearnRecord {
            inventory: inventory.clone(),
            method,
            message: RequestMessageSlot::attach(request),
            answer: BytesMut::new(),
        })
    }
}

/// One lifecycle call until it ends.
#[derive(Debug)]
pub struct LearnRecord {
    inventory: Inventory,
    method: Method,
    message: RequestMessageSlot,
    /// The head of the answer: the created id is its first field.
    answer: BytesMut,
}

/// Enough of an answer for the id a RunPodSandbox, CreateContainer or PullImage answer
/// carries, and for an ImageStatus answer with hundreds of names (all are small: this is a
/// bound, not a buffer size).
const ANSWER_HEAD: usize = 64 << 10;

impl StatusObserver for Option<LearnRecord> {
    fn on_data(&mut self, data: &Bytes) {
        if let Some(record) = self
            && record.answer.len() < ANSWER_HEAD
        {
            let room = ANSWER_HEAD - record.answer.len();
            record
                .answer
                .extend_from_slice(&data[..data.len().min(room)]);
        }
    }

    fn on_end(self, outcome: Outcome) {
        let Some(record) = self else { return };
        if outcome.code != tonic::Code::Ok {
            return;
        }
        // The answer is one gRPC message: its prefix, then the message (its head, when long).
        let answer = record.answer.get(PREFIX_LEN..);
        if record.method == Method::Status {
            if let Some(everywhere) = answer.and_then(inspect::user_namespaces_everywhere) {
                record.inventory.learn_user_namespaces(everywhere);
            }
            return;
        }
        if record.method == Method::ImageStatus {
            if let Some((id, names)) = answer.and_then(inspect::image_status) {
                record.inventory.learn_image(id, &names);
            }
            return;
        }
        let Some(subject) = record
            .message
            .subject(|m| Subject::of_request(record.method, m))
        else {
            return;
        };
        let created = answer.and_then(|m| inspect::created_id(record.method, m));
        record.inventory.learn(record.method, subject, created);
    }
}
