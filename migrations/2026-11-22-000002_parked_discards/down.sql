DROP TABLE parked_discards;
