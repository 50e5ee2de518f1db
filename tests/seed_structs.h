/*
 * The seed structs, copied verbatim from the design document
 * (shared/seeds/design-document.txt, section "Specifications / Messages").
 * Do not edit: tests/test_seed_structs.py checks that csrc/wire.h declares
 * these structs with exactly these fields, in this order, of these types.
 * The text is the document's own, so it lacks the semicolons after the
 * closing braces and uses // comments; it is read by that test, not by a
 * compiler.
 */

struct generic_message {
  uint8_t  message_type;
  uint64_t node_uuid_upper;
  uint64_t node_uuid_lower;
  uint64_t header_length;
}

struct worker_request{
  struct generic_message header;
  uint64_t job_uuid_upper;
  uint64_t job_uuid_lower;
  uint64_t program_length;
  uint64_t num_input_files; //number of input files to the job.
}

struct worker_status {
  struct generic_message header;
  uint64_t job_uuid_upper;
  uint64_t job_uuid_lower;
  uint8_t state;
}

struct file_request {
  struct generic_message header;
  uint64_t file_uuid_upper;
  uint64_t file_uuid_lower;
}

struct file_response {
  struct generic_message header;
  uint64_t file_uuid_upper;
  uint64_t file_uuid_lower;
  uint64_t file_length;
}

