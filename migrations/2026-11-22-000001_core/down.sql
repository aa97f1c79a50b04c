DROP TABLE anomalies;
DROP TABLE decisions;
DROP TABLE outbox;
DROP TABLE orders;
