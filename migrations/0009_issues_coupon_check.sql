-- coupon_issues.coupon_id names a coupon, checked once per statement instead of once per row: the
-- foreign key's per-row look-up and lock cost Postgres 3-6 µs of every persisted issue
-- (docs/benchmarks.md). Coupons are never deleted, so checking the inserted (or updated) rows is all the
-- foreign key did for this table; the last two triggers make "never deleted" a rule.
ALTER TABLE "coupon_issues" DROP CONSTRAINT "coupon_issues_coupon_id_coupons_id_fk";--> statement-breakpoint
CREATE FUNCTION coupon_issues_name_coupons() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM (SELECT DISTINCT coupon_id FROM new_rows) n WHERE NOT EXISTS (SELECT 1 FROM coupons c WHERE c.id = n.coupon_id)) THEN
    RAISE EXCEPTION 'insert or update on table "coupon_issues" names a coupon that does not exist' USING ERRCODE = 'foreign_key_violation';
  END IF;
  RETURN NULL;
END $$;--> statement-breakpoint
CREATE TRIGGER coupon_issues_insert_names_coupons AFTER INSERT ON coupon_issues REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION coupon_issues_name_coupons();--> statement-breakpoint
CREATE TRIGGER coupon_issues_update_names_coupons AFTER UPDATE ON coupon_issues REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION coupon_issues_name_coupons();--> statement-breakpoint
CREATE FUNCTION coupons_are_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'coupons are never deleted: their issues, revocations and redemptions name them' USING ERRCODE = 'foreign_key_violation';
END $$;--> statement-breakpoint
CREATE TRIGGER coupons_never_deleted BEFORE DELETE ON coupons FOR EACH STATEMENT EXECUTE FUNCTION coupons_are_kept();--> statement-breakpoint
CREATE TRIGGER coupons_never_truncated BEFORE TRUNCATE ON coupons FOR EACH STATEMENT EXECUTE FUNCTION coupons_are_kept();
