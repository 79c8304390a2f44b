-- Demo rows in the application tables (README "The database"): only `cartd seed-demo`,
-- `cartd demo` and the tests write them. Each row is given in the order of its query's
-- parameters.

-- name: insert_company
INSERT INTO companies (id, name, website, email, phone)
VALUES (:id, :name, :website, :email, :phone)

-- name: insert_agent
INSERT INTO company_agents (id, company_id, name, template_slug, is_active, settings)
VALUES (:id, :company_id, :name, :template_slug, :is_active, :settings)

-- name: insert_integration
INSERT INTO agent_integrations (id, agent_id, platform, is_active, config)
VALUES (:id, :agent_id, :platform, :is_active, :config)
