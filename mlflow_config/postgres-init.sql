-- Run: sudo -u postgres psql -v mlflow_password="'...'" -v prefect_password="'...'" -f mlflow_config/postgres-init.sql
-- One role and one database each for MLflow and Prefect (docs/deploy.md, step 2).
-- The passwords are psql variables so they never land in this file or in shell history files.
CREATE ROLE mlflow LOGIN PASSWORD :mlflow_password;
CREATE ROLE prefect LOGIN PASSWORD :prefect_password;
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE prefect OWNER prefect;
-- Prefect's migrations use the pg_trgm extension when available (faster log and name search).
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
