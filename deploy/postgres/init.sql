-- Database per service: each service owns its database and its migrations;
-- none reads another's tables. Run once by the postgres image on first start.
CREATE DATABASE users;
CREATE DATABASE catalog;
CREATE DATABASE orders;
