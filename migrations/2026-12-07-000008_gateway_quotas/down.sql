DROP TABLE gateway_quotas;
