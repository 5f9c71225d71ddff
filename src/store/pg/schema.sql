-- inbound's PostgreSQL schema, version 1. Applied by `inbound store migrate` in one transaction.
-- Keys are COLLATE "C" so that key order is byte order, as in the embedded store: queue ids and
-- conversation ids are ULIDs, and "oldest first" is key order.

CREATE TABLE messages (
    queue_id text COLLATE "C" PRIMARY KEY,
    received_at bigint NOT NULL,
    record text NOT NULL
);

-- Bodies are written in the same transaction as their record; any node can serve them.
CREATE TABLE bodies (
    queue_id text COLLATE "C" PRIMARY KEY,
    body bytea NOT NULL
);

-- (inbox, Message-ID) -> conversation and first copy: threading and duplicate detection. The
-- primary key is what makes the same Message-ID arriving on two nodes at once one entry.
CREATE TABLE thread_index (
    inbox text COLLATE "C" NOT NULL,
    message_id text COLLATE "C" NOT NULL,
    conversation text NOT NULL,
    first_queue_id text NOT NULL,
    PRIMARY KEY (inbox, message_id)
);

CREATE TABLE conversations (
    id text COLLATE "C" PRIMARY KEY,
    created_at bigint NOT NULL,
    record text NOT NULL
);

CREATE TABLE conversation_messages (
    conversation text COLLATE "C" NOT NULL,
    queue_id text COLLATE "C" NOT NULL,
    PRIMARY KEY (conversation, queue_id)
);

CREATE TABLE contacts (
    email text COLLATE "C" PRIMARY KEY,
    record text NOT NULL
);

CREATE TABLE contact_conversations (
    email text COLLATE "C" NOT NULL,
    conversation text COLLATE "C" NOT NULL,
    PRIMARY KEY (email, conversation)
);

CREATE TABLE tickets (
    id text COLLATE "C" PRIMARY KEY,
    record text NOT NULL
);

-- Ticket numbers from a sequence: no row every commit would have to lock.
CREATE SEQUENCE ticket_numbers;

CREATE TABLE inbox_states (
    id text COLLATE "C" PRIMARY KEY,
    record text NOT NULL
);

CREATE TABLE user_states (
    name text COLLATE "C" PRIMARY KEY,
    record text NOT NULL
);

-- One row per user and one per assignment rule: commits routed to different people or rules
-- never wait for each other.
CREATE TABLE open_counts (
    name text COLLATE "C" PRIMARY KEY,
    open bigint NOT NULL
);

CREATE TABLE round_robin (
    rule text COLLATE "C" PRIMARY KEY,
    position bigint NOT NULL
);

-- The outbox. `due` moves forward when a node claims an item (its lease); `lease_owner` says
-- which node holds it. The depth gauge is counted, not kept in a shared row.
CREATE TABLE outbox (
    id text COLLATE "C" PRIMARY KEY,
    due bigint NOT NULL,
    lease_owner text,
    record text NOT NULL
);
CREATE INDEX outbox_by_due ON outbox (due, id);

-- Inboxes created through the API, and every address any of them ever had (retired ones too,
-- lower-case), so that no address is handed to a second inbox.
CREATE TABLE inbox_definitions (
    id text COLLATE "C" PRIMARY KEY,
    record text NOT NULL
);

CREATE TABLE inbox_addresses (
    address text COLLATE "C" PRIMARY KEY,
    inbox text NOT NULL
);

-- Users and teams created through the API: kind "user" or "team", the definition as JSON.
CREATE TABLE people (
    kind text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    record text NOT NULL,
    PRIMARY KEY (kind, id)
);

-- Small values: retention cursors.
CREATE TABLE store_state (
    key text COLLATE "C" PRIMARY KEY,
    value text NOT NULL
);
