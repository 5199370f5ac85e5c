-- Run: sudo -u postgres psql -v mlflow_password="'...'" -v prefect_password="'...'" -v audit_password="'...'" -f mlflow_config/postgres-init.sql
-- One role and one database each for MLflow and Prefect, a database for MLflow's users and
-- permissions (`tunegate server --auth`), and the role people and workers write the audit trail
-- with (docs/deploy.md, steps 2 and 6d).
-- The passwords are psql variables so they never land in this file or in shell history files.
CREATE ROLE mlflow LOGIN PASSWORD :mlflow_password;
CREATE ROLE prefect LOGIN PASSWORD :prefect_password;
-- INSERT and SELECT on the audit table only, granted once the table exists (docs/deploy.md, step 6d).
CREATE ROLE tunegate_audit LOGIN PASSWORD :audit_password;
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE prefect OWNER prefect;
-- Users, password hashes and per-model permissions of MLflow's basic-auth app: only its server connects.
CREATE DATABASE mlflow_auth OWNER mlflow;
REVOKE ALL ON DATABASE mlflow_auth FROM PUBLIC;
-- Only mlflow creates tables in its database (MLflow's and the audit table, on first use); other
-- roles get what they are granted (PostgreSQL 13 and 14 let every role create in schema public).
\connect mlflow
ALTER SCHEMA public OWNER TO mlflow;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
-- Prefect's migrations use the pg_trgm extension when available (faster log and name search).
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
