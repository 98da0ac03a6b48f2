ALTER TABLE "coupon_issues" ADD COLUMN "revoke_reason" text;--> statement-breakpoint
ALTER TABLE "coupon_revocations" ADD COLUMN "claim" integer;--> statement-breakpoint
ALTER TABLE "coupon_revocations" ADD COLUMN "reason" text;--> statement-breakpoint
ALTER TABLE "coupons" ADD COLUMN "return_expired_to_stock" boolean DEFAULT false NOT NULL;--> statement-breakpoint
ALTER TABLE "coupon_revocations" ADD CONSTRAINT "coupon_revocations_one_unit" CHECK ("coupon_revocations"."claim" IS NULL OR ("coupon_revocations"."up_to_claim" IS NULL AND "coupon_revocations"."reason" IS NOT NULL));--> statement-breakpoint
UPDATE "coupon_issues" SET "revoke_reason" = 'cancelled' WHERE "revoked_at" IS NOT NULL AND "revoke_reason" IS NULL;--> statement-breakpoint
-- One-unit revocations (coupon_revocations.claim set: the expiry job returned exactly that claim) join the
-- cancels. Order does not matter and every writer may run this after its own commit:
--   - a one-unit fact always wins on its row: the job never returns a unit already revoked, so a cancel
--     that also names the claim (up_to_claim >= claim) came after the return and took nothing back;
--     the row moves to the fact's moment and reason even when a cancel's fix-up got there first;
--   - a cancel marks only rows still active (revoked_at IS NULL), as before, and never a claim a
--     one-unit fact names.
-- Both updates only ever move a row towards that final state, so concurrent writers (each UPDATE
-- re-checks its WHERE on the row version it waited for) converge.
CREATE OR REPLACE FUNCTION apply_coupon_revocations(p_coupon_ids bigint[], p_user_ids text[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  changed integer := 0;
  more integer := 0;
BEGIN
  IF NOT EXISTS (
    SELECT 1 FROM coupon_revocations r
    JOIN unnest(p_coupon_ids, p_user_ids) AS p(coupon_id, user_id) ON r.coupon_id = p.coupon_id AND r.user_id = p.user_id
  ) THEN
    RETURN 0;
  END IF;
  UPDATE coupon_issues i SET revoked_at = r.revoked_at, revoke_reason = r.reason
  FROM unnest(p_coupon_ids, p_user_ids) AS p(coupon_id, user_id)
  JOIN coupon_revocations r ON r.coupon_id = p.coupon_id AND r.user_id = p.user_id AND r.claim IS NOT NULL
  WHERE i.coupon_id = r.coupon_id AND i.user_id = r.user_id AND i.claim = r.claim
    AND (i.revoked_at IS DISTINCT FROM r.revoked_at OR i.revoke_reason IS DISTINCT FROM r.reason);
  GET DIAGNOSTICS changed = ROW_COUNT;
  UPDATE coupon_issues i SET revoked_at = hit.revoked_at, revoke_reason = 'cancelled'
  FROM (
    SELECT i2.id, min(r.revoked_at) AS revoked_at
    FROM unnest(p_coupon_ids, p_user_ids) AS p(coupon_id, user_id)
    JOIN coupon_revocations r ON r.coupon_id = p.coupon_id AND r.user_id = p.user_id AND r.claim IS NULL
    JOIN coupon_issues i2 ON i2.coupon_id = r.coupon_id AND i2.user_id = r.user_id AND i2.revoked_at IS NULL
     AND (r.up_to_claim >= i2.claim OR (r.up_to_claim IS NULL AND r.revoked_at >= i2.created_at))
    WHERE NOT EXISTS (SELECT 1 FROM coupon_revocations u WHERE u.coupon_id = i2.coupon_id AND u.user_id = i2.user_id AND u.claim = i2.claim)
    GROUP BY i2.id
  ) AS hit
  WHERE i.id = hit.id AND i.revoked_at IS NULL;
  GET DIAGNOSTICS more = ROW_COUNT;
  RETURN changed + more;
END $$;
