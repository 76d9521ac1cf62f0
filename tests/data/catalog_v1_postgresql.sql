-- The schema-version-1 catalog DDL for PostgreSQL, as mmsearch (indexer/catalog.py on main at ba0ae5d)
-- created it; tests/test_migrate.py builds a v1 catalog from it and checks the upgrade.
CREATE TABLE collections (
	id BIGSERIAL NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	uid VARCHAR(32) NOT NULL, 
	encoder_name TEXT NOT NULL, 
	encoder_family VARCHAR(32) NOT NULL, 
	encoder_digest VARCHAR(128) NOT NULL, 
	dim INTEGER NOT NULL, 
	index_spec VARCHAR(100) NOT NULL, 
	revision BIGINT NOT NULL, 
	purged_rev BIGINT NOT NULL, 
	created TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (name)
);
CREATE TABLE mmsearch_meta (
	key VARCHAR(64) NOT NULL, 
	value TEXT NOT NULL, 
	PRIMARY KEY (key)
);
CREATE TABLE items (
	id BIGSERIAL NOT NULL, 
	collection_id BIGINT NOT NULL, 
	uri TEXT NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	width INTEGER NOT NULL, 
	height INTEGER NOT NULL, 
	caption TEXT, 
	meta JSONB NOT NULL, 
	vector BYTEA NOT NULL, 
	created TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	updated TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	deleted BOOLEAN NOT NULL, 
	rev BIGINT NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(collection_id) REFERENCES collections (id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX ix_items_live_sha ON items (collection_id, sha256) WHERE deleted = false;
CREATE INDEX ix_items_meta ON items USING gin (meta jsonb_path_ops);
CREATE INDEX ix_items_rev ON items (collection_id, rev);
CREATE INDEX ix_items_uri ON items (collection_id, uri);
CREATE TABLE jobs (
	id BIGSERIAL NOT NULL, 
	collection_id BIGINT NOT NULL, 
	sources JSONB NOT NULL, 
	options JSONB NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	message TEXT, 
	resumed_from BIGINT, 
	host VARCHAR(255) NOT NULL, 
	pid INTEGER NOT NULL, 
	seen INTEGER NOT NULL, 
	added INTEGER NOT NULL, 
	updated INTEGER NOT NULL, 
	skipped INTEGER NOT NULL, 
	failed INTEGER NOT NULL, 
	started TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	finished TIMESTAMP WITHOUT TIME ZONE, 
	decode_s FLOAT NOT NULL, 
	encode_s FLOAT NOT NULL, 
	commit_s FLOAT NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(collection_id) REFERENCES collections (id) ON DELETE CASCADE
);
CREATE TABLE job_errors (
	id BIGSERIAL NOT NULL, 
	job_id BIGINT NOT NULL, 
	uri TEXT NOT NULL, 
	reason TEXT NOT NULL, 
	created TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE
);
CREATE INDEX ix_job_errors_job_id ON job_errors (job_id);
