-- Users, roles, tokens and the audit log (issue 11). A user has a role per namespace
-- (viewer < editor < admin) or is a platform admin (everything). `password_hash` is an
-- argon2id PHC string (NULL: the user signs in with API tokens only). `api_tokens`
-- holds API tokens and console sessions alike, by the SHA-256 of the token only.
CREATE TABLE users (
    name VARCHAR(64) NOT NULL,
    password_hash TEXT,
    platform_admin BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (name)
);

CREATE TABLE user_roles (
    user_name VARCHAR(64) NOT NULL,
    namespace VARCHAR(64) NOT NULL,
    role VARCHAR(16) NOT NULL,
    PRIMARY KEY (user_name, namespace)
);

CREATE INDEX user_roles_by_namespace ON user_roles (namespace);

CREATE TABLE api_tokens (
    id VARCHAR(64) NOT NULL,
    user_name VARCHAR(64) NOT NULL,
    token_sha256 VARCHAR(64) NOT NULL,
    name VARCHAR(255) NOT NULL,
    kind VARCHAR(16) NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    last_used_at BIGINT,
    PRIMARY KEY (id)
);

CREATE UNIQUE INDEX api_tokens_by_hash ON api_tokens (token_sha256);
CREATE INDEX api_tokens_by_user ON api_tokens (user_name);

-- The first platform admin; the admin token of the first start is its token.
INSERT INTO users (name, password_hash, platform_admin, created_at, updated_at)
VALUES ('admin', NULL, 1, 0, 0);
INSERT INTO api_tokens (id, user_name, token_sha256, name, kind, created_at, expires_at, last_used_at)
SELECT 'bootstrap', 'admin', content, 'the first-start admin token', 'token', 0, NULL, NULL
FROM settings WHERE name = 'admin_token_sha256';

-- Every change and every sign-in: who (`actor`), when (`at_ms`), from where
-- (`source`: the client address), what (`action`: method and path; `object`), the
-- outcome (`status`), and the object before and after (secrets removed), or the
-- revision that holds them.
CREATE TABLE audit_log (
    at_ms BIGINT NOT NULL,
    id VARCHAR(32) NOT NULL,
    actor VARCHAR(64),
    source VARCHAR(64),
    action VARCHAR(255) NOT NULL,
    namespace VARCHAR(64),
    object VARCHAR(255),
    status BIGINT NOT NULL,
    before_body TEXT,
    after_body TEXT,
    revision BIGINT,
    PRIMARY KEY (at_ms, id)
);

CREATE INDEX audit_log_by_namespace ON audit_log (namespace, at_ms);
