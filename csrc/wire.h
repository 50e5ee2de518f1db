/*
 * uds wire protocol: the one definition of every fixed message header.
 *
 * Rules:
 *  - All integers are little-endian and every struct is packed: no padding.
 *  - Every message is one ZeroMQ multipart message. Frame 0 is the packed
 *    struct of its type, which begins with `struct generic_message header`.
 *    `header.header_length` is sizeof() of that whole struct.
 *  - Frame 1, for types that have a body, is a msgpack map; later frames are
 *    raw bytes (file data). Each struct's comment says which follow.
 *  - 128-bit ids (node, job, file) travel as two uint64 halves: `upper` is the
 *    first 8 bytes of the id read big-endian, `lower` the last 8.
 *  - Request/reply types carry a `request_id` chosen by the requester and
 *    echoed in the reply, so several requests can be in flight on one socket.
 *
 * This file is compiled into the cffi module wire._wire_cffi and is checked
 * against gcc's own layout by tests/test_c_layout.py. Between the CDEF
 * markers only plain declarations may appear: the build feeds that part to
 * cffi's parser.
 */
#ifndef UDS_WIRE_H
#define UDS_WIRE_H

#include <stdint.h>

#define UDS_PACKED __attribute__((packed))

/* CDEF BEGIN */

enum message_type {
    MSG_WORKER_REQUEST = 1,
    MSG_WORKER_STATUS = 2,
    MSG_FILE_REQUEST = 3,
    MSG_FILE_RESPONSE = 4,
    MSG_ERROR = 5,
    MSG_HELLO = 6,
    MSG_HELLO_REPLY = 7,
    MSG_HEARTBEAT = 8,
    MSG_JOB_SUBMIT = 9,
    MSG_JOB_SUBMIT_REPLY = 10,
    MSG_JOB_STATUS = 11,
    MSG_JOB_STATUS_REPLY = 12,
    MSG_JOB_CANCEL = 13,
    MSG_CHUNK_DISPATCH = 14,
    MSG_CHUNK_CANCEL = 15,
    MSG_CHUNK_EVENTS = 16,
    MSG_CHUNK_EVENTS_ACK = 17,
    MSG_FILE_PUT_BEGIN = 18,
    MSG_FILE_PUT_DATA = 19,
    MSG_FILE_PUT_END = 20,
    MSG_FILE_PUT_REPLY = 21,
    MSG_FILE_STAT = 22,
    MSG_FILE_STAT_REPLY = 23,
    MSG_FILE_READ = 24,
    MSG_FILE_READ_REPLY = 25,
    MSG_NODES_QUERY = 26,
    MSG_NODES_REPLY = 27,
    MSG_EVENTS_QUERY = 28,
    MSG_EVENTS_REPLY = 29,
    MSG_STATS_QUERY = 30,
    MSG_STATS_REPLY = 31,
    MSG_STATUS_ACK = 32,
    MSG_NODE_REPORT = 33,
    MSG_FILE_MANIFEST = 34,
    MSG_FILE_MANIFEST_REPLY = 35,
    MSG_MASTER_CHANGE = 36,
    MSG_MASTER_CHANGE_REPLY = 37,
    MSG_STORAGE_HEARTBEAT = 38,
    MSG_STORAGE_HEARTBEAT_REPLY = 39,
    MSG_FILE_REPLICATE = 40,
    MSG_GC_CHECK = 41,
    MSG_GC_CHECK_REPLY = 42,
    MSG_GC_RUN = 43,
    MSG_GC_RUN_REPLY = 44,
    MSG_FILE_PIN = 45,
    MSG_FILE_PIN_REPLY = 46,
    MSG_JOB_RELEASE = 47,
    MSG_ATTEMPTS_QUERY = 48,
    MSG_ATTEMPTS_REPLY = 49,
    MSG_JOBS_QUERY = 50,
    MSG_JOBS_REPLY = 51,
    MSG_JOB_SPEC_QUERY = 52,
    MSG_JOB_SPEC_REPLY = 53
};

/* Roles, in hello.role and nodes_reply. */
enum node_role {
    ROLE_CLIENT = 1,
    ROLE_MASTER = 2,
    ROLE_LOADBALANCER = 3,
    ROLE_STORAGE = 4,
    ROLE_WORKER = 5
};

/* State of one chunk attempt, in worker_status.state and chunk events. */
enum chunk_state {
    CHUNK_STARTED = 1,
    CHUNK_SUCCEEDED = 2,
    CHUNK_FAILED = 3,
    CHUNK_CANCELLED = 4,
    CHUNK_TIMED_OUT = 5,
    CHUNK_LOST = 6,
    CHUNK_REJECTED = 7
};

/* State of a job, in job_status_reply.state. */
enum job_state {
    JOB_QUEUED = 1,
    JOB_RUNNING = 2,
    JOB_SUCCEEDED = 3,
    JOB_FAILED = 4,
    JOB_CANCELLED = 5,
    JOB_WAITING = 6,    /* for jobs it depends on, or for its start time */
    JOB_HELD = 7        /* until released */
};

/* error.error_code */
enum error_code {
    ERR_MALFORMED = 1,       /* the request did not decode */
    ERR_UNEXPECTED = 2,      /* a valid message this node does not accept */
    ERR_INVALID = 3,         /* decoded, but its content breaks a rule */
    ERR_UNKNOWN_FILE = 4,
    ERR_UNKNOWN_JOB = 5,
    ERR_HASH_MISMATCH = 6,   /* uploaded bytes do not hash to the claimed id */
    ERR_RANGE = 7,           /* offset/length outside the file */
    ERR_TOO_LARGE = 8,
    ERR_NOT_LEADER = 9,
    ERR_BUSY = 10,
    ERR_INTERNAL = 11,
    ERR_FORBIDDEN = 12       /* the sender's role may not send this message type */
};

/* file_put_reply.status */
enum put_status {
    PUT_STORED = 1,          /* the blob is now durable on this node */
    PUT_PRESENT = 2,         /* the node already had it: nothing to send */
    PUT_SEND_DATA = 3        /* go ahead with file_put_data frames */
};

/* Common prefix of every message's frame 0. 25 bytes. */
struct generic_message {
    uint8_t message_type;
    uint64_t node_uuid_upper;    /* sender's node id */
    uint64_t node_uuid_lower;
    uint64_t header_length;      /* sizeof the whole struct of this type */
} UDS_PACKED;

/* load balancer -> worker: run chunks of one job.
 * Body: epoch, program [id, size], args, inputs {name: [id, size]},
 * chunk_count, timeout_s, assignments [{chunk, attempt, inputs}].
 * program_length is the program blob's size; num_input_files counts the
 * job-wide inputs. */
struct worker_request {
    struct generic_message header;
    uint64_t job_uuid_upper;
    uint64_t job_uuid_lower;
    uint64_t program_length;
    uint64_t num_input_files;
} UDS_PACKED;

/* worker -> load balancer: one chunk attempt changed state (enum chunk_state).
 * Body: epoch, chunk, attempt, worker_started_at, exit_code, outputs,
 * stdout, stderr, error, elapsed_s, bytes_from_cache, bytes_from_storage. */
struct worker_status {
    struct generic_message header;
    uint64_t job_uuid_upper;
    uint64_t job_uuid_lower;
    uint8_t state;
} UDS_PACKED;

/* anyone -> storage: send me this whole file. No body. Answered by
 * file_response, or by error (ERR_UNKNOWN_FILE, ERR_TOO_LARGE: use
 * file_read for files larger than one data frame). */
struct file_request {
    struct generic_message header;
    uint64_t file_uuid_upper;
    uint64_t file_uuid_lower;
} UDS_PACKED;

/* storage -> requester: a whole file. Frame 1 is the raw content. */
struct file_response {
    struct generic_message header;
    uint64_t file_uuid_upper;
    uint64_t file_uuid_lower;
    uint64_t file_length;
} UDS_PACKED;

/* any -> any: a request failed. Body: reason (text for a person). */
struct error {
    struct generic_message header;
    uint64_t request_id;         /* of the failed request; 0 if it had none */
    uint16_t error_code;         /* enum error_code */
    uint8_t failed_type;         /* message_type of the failed request, 0 if unknown */
} UDS_PACKED;

/* worker/load balancer/client -> master or load balancer: I am here.
 * Body: host, address (where the sender serves, "" if nowhere), version,
 * what a worker offers (millicpus, memory_bytes, disk_bytes, sandbox), and
 * the node's facts: software (its uds version), cpus, machine_memory_bytes,
 * machine_disk_bytes (the machine's, 0: not known), addresses (every
 * address the node is reached at). */
struct hello {
    struct generic_message header;
    uint64_t request_id;
    uint8_t role;                /* enum node_role */
    uint32_t slots;              /* chunks it can run at once (workers) */
    uint64_t cache_bytes;        /* cache capacity (workers) */
    uint64_t start_time_ms;      /* unix time the process started */
} UDS_PACKED;

/* master/load balancer -> sender of hello: welcome. No body. */
struct hello_reply {
    struct generic_message header;
    uint64_t request_id;
    uint64_t epoch;              /* load-balancer epoch the receiver must use */
    uint32_t heartbeat_interval_ms;
    uint32_t lease_ms;           /* silence after which the sender is lost */
} UDS_PACKED;

/* worker -> load balancer, load balancer -> master: still alive.
 * Body: running [[job, chunk, attempt]], cache_added [[id, size]],
 * cache_removed [id]. A worker lists every attempt it runs; a load
 * balancer sends its total free slots and assigned attempts as counts and
 * lists nothing. */
struct heartbeat {
    struct generic_message header;
    uint64_t epoch;
    uint32_t free_slots;
    uint32_t running_count;
} UDS_PACKED;

/* client -> master: run this job (idempotent by job id).
 * Body: program [id, size], args, inputs {name: [id, size]},
 * chunk_inputs [{name: [id, size]}] (empty or one per chunk), timeout_s,
 * max_retries, name. */
struct job_submit {
    struct generic_message header;
    uint64_t request_id;
    uint64_t job_uuid_upper;
    uint64_t job_uuid_lower;
    uint32_t chunk_count;
} UDS_PACKED;

/* master -> client: the job is committed. created = 0 if it already was. */
struct job_submit_reply {
    struct generic_message header;
    uint64_t request_id;
    uint64_t job_uuid_upper;
    uint64_t job_uuid_lower;
    uint8_t created;
} UDS_PACKED;

/* client -> master: how is this job? No body. With detail 0 the reply
 * carries the counts only (an empty chunks list). With detail 1 it carries
 * the reports of chunks first_chunk, first_chunk + 1, ...: at most
 * max_chunks of them (0: as many as the master allows) and never more than
 * fit in one body, so a client reads a large job page by page. With
 * wait_ms > 0 the master answers once the job is final or wait_ms has
 * passed, whichever comes first: a waiting client learns of the end at
 * once, without polling. */
struct job_status {
    struct generic_message header;
    uint64_t request_id;
    uint64_t job_uuid_upper;
    uint64_t job_uuid_lower;
    uint8_t detail;              /* 1: chunk reports; 0: counts only */
    uint32_t wait_ms;            /* 0: answer now */
    uint32_t first_chunk;        /* the first chunk to report (detail 1) */
    uint32_t max_chunks;         /* 0: the master's page size */
} UDS_PACKED;

/* master -> client: answer to job_status and job_cancel.
 * Body: name, submitted_at, finished_at, chunks [{chunk, state, attempt,
 * exit_code, outputs, stdout, stderr, error, worker, elapsed_s,
 * bytes_from_cache, bytes_from_storage}]: the reports of chunks
 * first_chunk .. next_chunk - 1 in order; next_chunk == chunk_count once
 * the last page is reached (a reply without detail has
 * next_chunk == first_chunk and no reports). A job past retention is
 * answered from the history line the masters keep of it (its final state,
 * times, counts and first output ids): past_retention 1, no reports, and
 * first_chunk == next_chunk == chunk_count, so a client reading pages stops. */
struct job_status_reply {
    struct generic_message header;
    uint64_t request_id;
    uint64_t job_uuid_upper;
    uint64_t job_uuid_lower;
    uint8_t state;               /* enum job_state */
    uint32_t chunk_count;
    uint32_t chunks_succeeded;
    uint32_t chunks_failed;
    uint32_t first_chunk;        /* the first chunk reported */
    uint32_t next_chunk;         /* the chunk after the last one reported */
    uint8_t past_retention;      /* 1: only the job's history line is kept */
} UDS_PACKED;

/* client -> master: cancel this job. No body. Answered by job_status_reply. */
struct job_cancel {
    struct generic_message header;
    uint64_t request_id;
    uint64_t job_uuid_upper;
    uint64_t job_uuid_lower;
} UDS_PACKED;

/* client -> master: release this held job. No body. Answered by
 * job_status_reply. */
struct job_release {
    struct generic_message header;
    uint64_t request_id;
    uint64_t job_uuid_upper;
    uint64_t job_uuid_lower;
} UDS_PACKED;

/* client -> master: every attempt of one chunk that the masters keep. No
 * body. */
struct attempts_query {
    struct generic_message header;
    uint64_t request_id;
    uint64_t job_uuid_upper;
    uint64_t job_uuid_lower;
    uint32_t chunk;
} UDS_PACKED;

/* Body: attempts [{attempt, state, failure, worker, dispatched_at,
 * running_at, committed_at, <result fields>}], oldest first;
 * attempts_dropped: how many older attempts are no longer kept. */
struct attempts_reply {
    struct generic_message header;
    uint64_t request_id;
    uint64_t job_uuid_upper;
    uint64_t job_uuid_lower;
    uint32_t chunk;
} UDS_PACKED;

/* client -> master: jobs newest first, those kept and those past retention.
 * Body: states [u8] ([]: any), since (or nil): submitted at or after it;
 * before (or nil): [submitted_at, job] of the last job of the previous page. */
struct jobs_query {
    struct generic_message header;
    uint64_t request_id;
    uint32_t limit;
} UDS_PACKED;

/* Body: jobs [{job, name, state, submitted_at, started_at, finished_at,
 * chunk_count, chunks_succeeded, chunks_failed, chunks_cancelled,
 * chunks_cached, past_retention, error}]; more: another page follows. */
struct jobs_reply {
    struct generic_message header;
    uint64_t request_id;
} UDS_PACKED;

/* client -> master: what a job was submitted with. No body. Answered by
 * job_spec_reply, or UNKNOWN_JOB (also for a job past retention). */
struct job_spec_query {
    struct generic_message header;
    uint64_t request_id;
    uint64_t job_uuid_upper;
    uint64_t job_uuid_lower;
} UDS_PACKED;

/* Body: name, program [id, size], args [str], inputs {name: [id, size]}
 * (job-wide, refs resolved once their jobs succeeded), inputs_dropped (of
 * a map too large for one body), after [job ids it waits for]. */
struct job_spec_reply {
    struct generic_message header;
    uint64_t request_id;
    uint64_t job_uuid_upper;
    uint64_t job_uuid_lower;
} UDS_PACKED;

/* master -> active load balancer: run these chunk attempts.
 * Body: jobs [{job, program, args, inputs, chunk_count, timeout_s}],
 * attempts [{job, chunk, attempt, inputs}]. */
struct chunk_dispatch {
    struct generic_message header;
    uint64_t epoch;
    uint32_t attempt_count;
} UDS_PACKED;

/* master -> load balancer, load balancer -> worker: stop these attempts.
 * Body: attempts [[chunk, attempt]]; empty means every chunk of the job. */
struct chunk_cancel {
    struct generic_message header;
    uint64_t epoch;
    uint64_t job_uuid_upper;
    uint64_t job_uuid_lower;
} UDS_PACKED;

/* load balancer -> master: a batch of chunk-attempt events.
 * Body: events [{job, chunk, attempt, state, worker, worker_started_at,
 * exit_code, outputs, stdout, stderr, error, elapsed_s, bytes_from_cache,
 * bytes_from_storage}].
 * Resent until acknowledged; the master applies each event at most once. */
struct chunk_events {
    struct generic_message header;
    uint64_t epoch;
    uint64_t batch_id;
    uint32_t event_count;
} UDS_PACKED;

/* master -> load balancer: the batch is committed. No body. */
struct chunk_events_ack {
    struct generic_message header;
    uint64_t epoch;
    uint64_t batch_id;
} UDS_PACKED;

/* uploader -> storage: I want to store this file. No body. Answered by
 * file_put_reply PUT_PRESENT (done) or PUT_SEND_DATA. */
struct file_put_begin {
    struct generic_message header;
    uint64_t request_id;
    uint64_t file_uuid_upper;
    uint64_t file_uuid_lower;
    uint64_t file_length;
} UDS_PACKED;

/* uploader -> storage: a piece of the file at offset. Frame 1: raw bytes.
 * Pieces arrive in order on one connection. Not answered. */
struct file_put_data {
    struct generic_message header;
    uint64_t request_id;
    uint64_t file_uuid_upper;
    uint64_t file_uuid_lower;
    uint64_t offset;
} UDS_PACKED;

/* uploader -> storage: that was all of it. Answered by file_put_reply
 * PUT_STORED or error (ERR_HASH_MISMATCH, ERR_RANGE). */
struct file_put_end {
    struct generic_message header;
    uint64_t request_id;
    uint64_t file_uuid_upper;
    uint64_t file_uuid_lower;
} UDS_PACKED;

/* storage -> uploader. No body. */
struct file_put_reply {
    struct generic_message header;
    uint64_t request_id;
    uint64_t file_uuid_upper;
    uint64_t file_uuid_lower;
    uint8_t status;              /* enum put_status */
} UDS_PACKED;

/* anyone -> storage: do you have this file, how long is it? No body. */
struct file_stat {
    struct generic_message header;
    uint64_t request_id;
    uint64_t file_uuid_upper;
    uint64_t file_uuid_lower;
} UDS_PACKED;

/* storage -> requester. No body. */
struct file_stat_reply {
    struct generic_message header;
    uint64_t request_id;
    uint64_t file_uuid_upper;
    uint64_t file_uuid_lower;
    uint64_t file_length;
    uint8_t present;
} UDS_PACKED;

/* anyone -> storage: send length bytes from offset. No body. */
struct file_read {
    struct generic_message header;
    uint64_t request_id;
    uint64_t file_uuid_upper;
    uint64_t file_uuid_lower;
    uint64_t offset;
    uint64_t length;
} UDS_PACKED;

/* storage -> requester: the range. Frame 1: raw bytes, exactly length. */
struct file_read_reply {
    struct generic_message header;
    uint64_t request_id;
    uint64_t file_uuid_upper;
    uint64_t file_uuid_lower;
    uint64_t offset;
    uint64_t length;
} UDS_PACKED;

/* reader -> storage: the block hashes of a file (doc/storage.md), from
 * first_block on, as many as fit in one data frame. No body. A file of one
 * block needs none: its id checks its only block. */
struct file_manifest {
    struct generic_message header;
    uint64_t request_id;
    uint64_t file_uuid_upper;
    uint64_t file_uuid_lower;
    uint64_t first_block;
} UDS_PACKED;

/* storage -> reader. Frame 1: raw bytes, the 32-byte hashes of blocks
 * first_block .. first_block + block_count - 1, concatenated. */
struct file_manifest_reply {
    struct generic_message header;
    uint64_t request_id;
    uint64_t file_uuid_upper;
    uint64_t file_uuid_lower;
    uint64_t file_length;
    uint64_t first_block;
    uint32_t block_count;
} UDS_PACKED;

/* client -> master or load balancer: which nodes do you know? No body. */
struct nodes_query {
    struct generic_message header;
    uint64_t request_id;
} UDS_PACKED;

/* Body: nodes [{node, role, host, address, slots, free_slots, running,
 * cache_bytes, started_at, last_seen_s, state, <what a worker offers>,
 * lease_epoch, figures, <the node's facts, as in hello>}]. */
struct nodes_reply {
    struct generic_message header;
    uint64_t request_id;
} UDS_PACKED;

/* client -> master: up to limit events with sequence number > after_seq.
 * Body: job (or nil), node (or nil), kinds [str] ([]: every kind): only
 * events that match all given filters; wait_ms: when none match yet, hold
 * the request until one commits or the wait is over. */
struct events_query {
    struct generic_message header;
    uint64_t request_id;
    uint64_t after_seq;
    uint32_t limit;
} UDS_PACKED;

/* Body: events [{seq, at, kind, job, chunk, attempt, node, detail}];
 * through_seq: the reply covers the log up to this seq (ask again after it);
 * gap_from, gap_to: events in [gap_from, gap_to] that might have matched were
 * dropped from the log before they were read (0, 0: none). */
struct events_reply {
    struct generic_message header;
    uint64_t request_id;
    uint64_t last_seq;           /* newest sequence number the master has */
} UDS_PACKED;

/* anyone -> any daemon: your counters, please. No body. */
struct stats_query {
    struct generic_message header;
    uint64_t request_id;
} UDS_PACKED;

/* Body: role, counters {name: int}. */
struct stats_reply {
    struct generic_message header;
    uint64_t request_id;
} UDS_PACKED;

/* load balancer -> worker: the masters have committed these final
 * statuses; stop resending them.
 * Body: attempts [[job, chunk, attempt, state]]. */
struct status_ack {
    struct generic_message header;
    uint64_t epoch;
    uint32_t attempt_count;
} UDS_PACKED;

/* load balancer -> master: the workers it knows, every heartbeat period.
 * Body: nodes [{node, role, host, address, slots, free_slots, running,
 * cache_bytes, started_at, last_seen_s, state}]. */
struct node_report {
    struct generic_message header;
    uint64_t epoch;
} UDS_PACKED;

/* client -> master (admin): add a master to the Raft group, or remove one.
 * action: 1 add, 2 remove. The leader answers once the change is committed.
 * Body: raft (the member's pysyncobj address, host:port), address (its
 * ZeroMQ address for clients; empty on remove). */
struct master_change {
    struct generic_message header;
    uint64_t request_id;
    uint8_t action;
} UDS_PACKED;

/* master -> client: the change is committed at commit_index.
 * Body: members [raft address], the group as the leader now sees it. */
struct master_change_reply {
    struct generic_message header;
    uint64_t request_id;
    uint64_t commit_index;
} UDS_PACKED;

/* storage -> master, every heartbeat interval: I serve at `address`, with
 * these figures. It is also the storage node's hello: the first one from a
 * node, or from a new process of it, registers it with the masters.
 * Body: host, address, version, <the node's facts, as in hello>,
 * figures {name: int} (capacity_bytes,
 * used_bytes, free_bytes, blob_count, repair_pending, repaired_files,
 * repaired_bytes, scrubbed_blobs, corrupt_blobs, ...). */
struct storage_heartbeat {
    struct generic_message header;
    uint64_t request_id;
    uint64_t start_time_ms;      /* unix time the process started */
} UDS_PACKED;

/* master (the leader) -> storage: registered; here is the membership.
 * Body: nodes [{node, address, state, free_bytes}], every storage node the
 * masters know, state "alive" or "lost". */
struct storage_heartbeat_reply {
    struct generic_message header;
    uint64_t request_id;
    uint32_t heartbeat_interval_ms;
} UDS_PACKED;

/* storage -> storage (repair): you are one of this file's replicas; if you
 * lack it, pull it from me (the sender, reachable at the body's `source`)
 * and check it against its id. No reply until the receiver holds it.
 * Body: source (address). Reply: file_put_reply PUT_PRESENT or PUT_STORED,
 * or an error. */
struct file_replicate {
    struct generic_message header;
    uint64_t request_id;
    uint64_t file_uuid_upper;
    uint64_t file_uuid_lower;
    uint64_t file_length;
} UDS_PACKED;

/* storage -> master (the leader): of these blobs, unused on the node for
 * longer than the grace period, which may be deleted? Body: files [id]. */
struct gc_check {
    struct generic_message header;
    uint64_t request_id;
} UDS_PACKED;

/* master -> storage: those that no retained job and no pin has referenced
 * within the grace period. Body: files [id], a subset of the asked. */
struct gc_check_reply {
    struct generic_message header;
    uint64_t request_id;
} UDS_PACKED;

/* client (admin) -> storage: run a collection pass now; with dry_run 1
 * delete nothing and report what would go. No body. */
struct gc_run {
    struct generic_message header;
    uint64_t request_id;
    uint8_t dry_run;
} UDS_PACKED;

/* storage -> client: the pass is over. Body: files [[id, size]], deleted
 * or, on a dry run, that would be. */
struct gc_run_reply {
    struct generic_message header;
    uint64_t request_id;
    uint8_t dry_run;
    uint64_t blobs_examined;     /* blobs older than the grace period */
    uint64_t bytes;              /* total size of `files` */
} UDS_PACKED;

/* client -> master: keep these files from collection until `until_ms`
 * (unix time, ms). A pin only lengthens: a later `until_ms` wins.
 * Body: files [id]. */
struct file_pin {
    struct generic_message header;
    uint64_t request_id;
    uint64_t until_ms;
} UDS_PACKED;

/* master -> client: the pins are committed. No body. */
struct file_pin_reply {
    struct generic_message header;
    uint64_t request_id;
    uint32_t file_count;
} UDS_PACKED;

/* CDEF END */

#endif /* UDS_WIRE_H */
