-- A cluster's Kubernetes face (what the cross-cluster controller watches): its role,
-- provider and context as JSON (`kubernetes`, no credentials), and its kubeconfig
-- sealed with the admin's data key (`enc:v1:…`, see src/secrets.rs). Both NULL for a
-- cluster without one.
ALTER TABLE clusters ADD COLUMN kubernetes TEXT;
ALTER TABLE clusters ADD COLUMN kubeconfig TEXT;
